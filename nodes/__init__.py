"""ComfyUI glue: the only code that imports the host. Node modules turn widgets into effects and install them."""
