"""xpusim built-in plugins, each registered through the `xpusim` entry-point group."""
