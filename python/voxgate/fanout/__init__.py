"""Fan-out of live session events to listeners, within and across server instances."""
