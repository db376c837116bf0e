"""The one shared trainer: the loop, its resumable state, best-adapter selection, optimizer and
schedule, run metrics, stops and memory measurement. It trains whatever parameters a strategy left
trainable, through the Task protocol; it never names a strategy or a task."""
