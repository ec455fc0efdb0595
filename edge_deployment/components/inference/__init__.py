"""The inference component: the code that runs on the Greengrass core device, and its recipe."""
