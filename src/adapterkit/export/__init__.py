"""Taking a trained adapter elsewhere: a merged Hugging Face model directory (`merge`), a GGUF file
(`gguf`), what an adapter is and where it can go (`inspection`, `compatibility`).

Every export is verified: the written files are read back by an independent reader and their
logits compared with base + adapter's on held-out rows (`verify`, `gguf_check`).
"""
