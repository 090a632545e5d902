"""The controller (service + daemon) and the client both front ends use."""
