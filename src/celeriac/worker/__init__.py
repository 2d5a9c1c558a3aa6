"""celeriac worker: the consumer loop, execution, pools and worker processes."""
