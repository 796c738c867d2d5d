"""Where documents come from: folders (scan and watch) and, later, queues."""
