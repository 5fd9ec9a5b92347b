"""Step 1 of a request's way: user input to a checked JSON body.

Body fields (`_body`), image inputs turned into data URLs (`_data_urls`), prompt files read
into batch items (`_prompts`) and the items' ids (`_ids`). Imports nothing from the layers
after it (pacing, HTTP, output, batch).
"""
