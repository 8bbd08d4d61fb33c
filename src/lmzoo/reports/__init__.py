"""Reading what runs left behind: comparison tables and loss curves."""
