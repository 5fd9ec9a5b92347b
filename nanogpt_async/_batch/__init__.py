"""Step 5: many items to files and a manifest.

The batch's way through, one module per stage: its arguments checked (`_settings`), input to
jobs with ids (`_prepare`), skipping what an earlier run did while reading ahead (`_resume`),
admission (`_admit`: pipeline and generation slots, the budget `_budget`), sending (`_send`),
one item's way from answer to result (`_item`), saving and its manifest line (`_save`,
`_manifest`, `_appender`, file names in `_names`). `_runner`'s `Batch` is the outline that
wires them; `_lifecycle` holds its state and why it stopped, `_tally` its counts, `_results`
what it hands out. Around them: the dry run (`_plan`), URL expiry and error streaks
(`_expiry`, `_streak`), and work shared across processes and machines (`_shared`, `_fence`,
`_shards`, `_shard_report`). Only the client's `generate_many` (lazily) and the CLI import it.
"""
