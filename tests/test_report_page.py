"""report/workflow.rst, the report's landing page, rendered the way ``snakemake --report``
renders it (snakemake.report.auto_report: a Jinja2 template with ``snakemake.config``,
``categories`` and ``files``, then docutils to HTML) for every shipped config after schema
defaults are filled in: every value is the config's, no substitution comes out empty, and
the verdict is linked first.  No Snakemake run."""

import html
import inspect
import re
import textwrap
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
import yaml
from docutils.core import publish_parts
from snakemake.report import auto_report
from snakemake.utils import update_config, validate

from newllm.tuning import tuning_run

pytestmark = pytest.mark.filterwarnings('ignore:Argument "writer_name" will be removed:PendingDeprecationWarning')
"""auto_report calls publish_parts(writer_name=...), which docutils will drop in 2.0."""

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "report" / "workflow.rst"
STUDY_CONFIGS = sorted(p.name for p in (REPO / "config").glob("*.yaml") if p.name not in ("config.yaml", "schema.yaml"))


def snakemake_source() -> str:
    return inspect.getsource(auto_report)


def rst_links() -> str:
    """The link targets Snakemake appends to the page (one per category and result file),
    taken from its own source so the test renders what the report renders."""
    match = re.search(r'rst_links = textwrap\.dedent\("""(.*?)"""\)', snakemake_source(), re.S)
    assert match, "snakemake.report.auto_report no longer defines rst_links as this test expects"
    return textwrap.dedent(match.group(1))


def load_config(study: str | None = None) -> dict:
    """config/config.yaml, with config/<study> layered over it as ``--configfile`` does
    (nested keys merge, lists and scalars replace), then schema defaults filled in as
    rules/common.smk's ``validate`` does."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    if study is not None:
        update_config(config, yaml.safe_load((REPO / "config" / study).read_text()))
    validate(config, str(REPO / "config" / "schema.yaml"))
    return config


def render(config: dict, files=(), undefined=jinja2.Undefined) -> str:
    """The page as HTML, as in auto_report: ``Environment(trim_blocks=True,
    lstrip_blocks=True)``, a ``Snakemake`` object with ``config``, docutils ``html_body``."""

    class Snakemake:
        pass

    Snakemake.config = config
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, undefined=undefined)
    rst = env.from_string(PAGE.read_text() + rst_links()).render(snakemake=Snakemake, categories={}, files=list(files))
    return publish_parts(rst, writer_name="html")["html_body"]


def blocks(page: str) -> list[str]:
    """The text of every paragraph and list item of the page (a nested list's items apart
    from their parent's): tags removed, entities decoded, line breaks as spaces."""
    parts = re.split(r"</?(?:div|p|ul|ol|li)\b[^>]*>", page)
    texts = [html.unescape(re.sub(r"<[^>]+>", "", part)).replace("\n", " ").strip() for part in parts]
    return [t for t in texts if t]


def text_of(page: str) -> str:
    """The page's text, one space between blocks."""
    return " ".join(blocks(page))


def blanks(page: str) -> list[str]:
    """Where a substitution came out empty: a space before punctuation ("seed ."), a
    double space inside a sentence ("of  samples"; two after a full stop separate
    sentences), empty parentheses, an empty list ("sizes: ,"), an empty paragraph or item."""
    patterns = [r"\s[,.;:)]", r"[^.]\s{2,}\S", r"\(\s*\)", r":\s*[,.]"]
    found = [m.group(0) for text in blocks(page) for p in patterns for m in re.finditer(p, text)]
    return found + re.findall(r"<(?:p|li)\b[^>]*>\s*</(?:p|li)>", page)


VERDICT = SimpleNamespace(target="verdict.html", path=Path("results/chitchat_cpu/tables/verdict.html"))
"""A result file as auto_report lists it: ``target`` (the file name) and ``path``."""


def test_snakemake_renders_the_page_as_this_test_does():
    source = snakemake_source()
    for line in (
        "trim_blocks=True",
        "lstrip_blocks=True",
        "config = dag.workflow.config",
        "workflow_description = f.read() + rst_links",
        "snakemake=Snakemake, categories=results, files=files",
        'writer_name="html"',
        '"html_body"',
    ):
        assert line in source, f"snakemake.report.auto_report changed: {line!r} is gone"
    assert ".. _{{ res.target }}: javascript:app.showResultInfo" in rst_links()


@pytest.mark.parametrize("study", [None, *STUDY_CONFIGS])
def test_every_substitution_is_filled_and_equals_the_config(study):
    config = load_config(study)
    render(config, [VERDICT], undefined=jinja2.StrictUndefined)  # raises on any missing key
    page = render(config, [VERDICT])
    assert "system-message" not in page and "problematic" not in page, page
    assert blanks(page) == [], blocks(page)
    text = text_of(page)
    split, seeds = config["validation"], config["seeds"]
    assert f"New-LLM scaling study {config['study']}:" in text
    assert f"Corpus: {config['corpus']['name']} (source {config['corpus']['source']}), tokenizer {config['tokenizer']}." in text
    assert f"Training sizes: {', '.join(str(n) for n in sorted(config['sample_sizes']))} conversations, nested" in text
    assert f"Training seeds: {', '.join(str(s) for s in seeds)} ({len(seeds)} seed" in text
    assert f"context_dims: {', '.join(str(d) for d in sorted(config['context_dims']))}." in text
    assert f"Dev split: {split['dev_samples']} conversations, for selection only" in text
    assert f"Test split: {split['test_samples']} conversations, for reporting only" in text
    assert f"with {config['analysis']['bootstrap_resamples']} bootstrap resamples" in text
    assert f"split seed {split['seed']}," in text
    assert f"Variants: {', '.join(config['variants'])} (the first is the reference variant" in text
    if config["embeddings"]["source"] in ("bigram", "word2vec"):
        assert f"Embedding slice: {split['embedding_samples']} conversations" in text
    if config["tuning"]["enabled"]:
        run = tuning_run(config)
        factors = ", ".join(map(str, config["tuning"]["learning_rate_factors"]))
        assert f"learning rate × {factors} of the configured one" in text
        assert f"at {run['samples']} conversations, seed {run['seed']};" in text
    else:
        assert "Tuning: off;" in text
    # every model, in config order, one list item each
    assert f"Models ({len(config['models'])}), all trained" in text
    nested = re.search(r"<strong>Models</strong>.*?<ul>(.*?)</ul>", page, re.S)
    assert nested, page
    assert [text_of(item) for item in re.findall(r"<li>(.*?)</li>", nested.group(1), re.S)] == config["models"]


def test_the_verdict_is_linked_before_the_design():
    page = render(load_config(), [VERDICT])
    link = "javascript:app.showResultInfo('results/chitchat_cpu/tables/verdict.html')"
    assert f'href="{link}"' in page
    assert page.index(link) < page.index("Design of the study")
    # before the verdict exists the page names the file, with no broken link
    page = render(load_config())
    assert "system-message" not in page and "problematic" not in page and "javascript:app.showResultInfo" not in page
    assert "tables/verdict.html" in text_of(page) and "not built" in text_of(page)


def test_the_linked_file_is_the_verdict_rule_s_report_entry():
    """The page links the result named verdict.html: rule verdict must report that file."""
    rules = (REPO / "rules" / "analysis.smk").read_text()
    assert re.search(r'report\(\s*"results/\{study\}/tables/verdict\.html"', rules)


def test_a_config_with_only_the_required_keys_renders():
    config = {"study": "s", "corpus": {"name": "c", "source": "chitchat_dataset"}, "sample_sizes": [1, 2], "context_dims": [8]}
    validate(config, str(REPO / "config" / "schema.yaml"))
    page = render(config, undefined=jinja2.StrictUndefined)
    assert blanks(page) == [], blocks(page)
    text = text_of(page)
    assert "Training sizes: 1, 2 conversations" in text and "Dev split: 50 conversations" in text


CAPTIONS = sorted(p.name for p in (REPO / "report").glob("*.rst") if p.name != PAGE.name)


@pytest.mark.parametrize("caption", CAPTIONS)
def test_every_caption_renders_without_a_docutils_warning(caption):
    """A caption is Jinja over ``snakemake.config``, then reStructuredText: a stray ``name_``
    (a link to nowhere) or a broken list renders as an error box in the report."""

    class Snakemake:
        config = load_config()

    rst = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string((REPO / "report" / caption).read_text())
    text = rst.render(snakemake=Snakemake)
    publish_parts(text, writer_name="html", settings_overrides={"halt_level": 2, "report_level": 2})  # raises on a warning
