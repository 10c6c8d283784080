# Baseline language models (issue 9): n-gram, LSTM, Transformer.
