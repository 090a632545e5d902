"""One Textual screen per file: the k9s-style views (fleet, queue, gpus, cloud, events), the
drill-down screens (node, GPU, job, logs) and the modal dialogs."""
