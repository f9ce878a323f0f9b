"""splitpoint.boards: board definitions as data, one folder per board id (``<BOARD_ID>/board.toml``)."""
