"""Step 5: many items to files and a manifest.

The plan and price estimate (`_plan`, `_budget`), the run itself (`_runner`), file names
(`_names`), the manifest and resume (`_manifest`, `_appender`), results (`_results`), URL
expiry and error streaks (`_expiry`, `_streak`), and work split across machines (`_shards`,
`_fence`, `_shard_report`). Only the client's `generate_many` (lazily) and the CLI import it.
"""
