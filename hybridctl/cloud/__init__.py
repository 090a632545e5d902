"""Cloud providers behind one port (`base.CloudProvider`): simulated, aws, command."""
