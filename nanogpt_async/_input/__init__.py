"""Step 1 of a request's way: user input to a checked JSON body.

Body fields (`_body`), image inputs turned into data URLs (`_data_urls`), prompt files read
into batch items (`_prompts`), the items' ids (`_ids`) and whole-number arguments, body fields
and batch settings alike (`_numbers`). Imports nothing from the layers
after it (pacing, HTTP, output, batch).
"""
