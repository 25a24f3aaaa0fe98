# Unit tests of gateway/chat_template (paths relative to tests/).
