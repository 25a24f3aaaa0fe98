# Unit tests of gateway/tokenizer (paths relative to tests/).
