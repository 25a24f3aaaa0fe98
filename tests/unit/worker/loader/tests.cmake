# Unit tests of worker/loader (paths relative to tests/).
