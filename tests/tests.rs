mod placeholder_check {}
