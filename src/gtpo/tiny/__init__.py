"""The shipped tiny model: a locally built tokenizer and a few-MB Qwen2, warm-started on TIR traces."""
