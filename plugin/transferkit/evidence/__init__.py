"""What a result is worth: one configuration over several seeds (seeds), the adapted model against the base paired
by seed (comparison), a search that chooses on validation and tests once (search, search_space), and the statistics
they report (stats: intervals over seeds, bootstraps over test examples, McNemar's test)."""
