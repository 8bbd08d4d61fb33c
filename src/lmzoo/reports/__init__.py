"""Reading what runs left behind: comparison tables, statistics over seeds, loss curves, reports and scaling fits."""
