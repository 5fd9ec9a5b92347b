"""Step 4: an answer to bytes and files.

Typed responses with images decoded off the loop or downloaded from signed URLs
(`_responses`) and crash-safe file writes (`_files`).
"""
