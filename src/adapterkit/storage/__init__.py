"""What adapterkit keeps on disk, and where models come from.

The adapter directory format, checkpoints, run directories, model sources (Hugging Face
directories, GGUF files, the embedded defaults) and the one atomic-write helper the others use.
Nothing here knows a strategy or a task by name."""
