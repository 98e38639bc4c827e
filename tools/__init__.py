"""Developer scripts of the cattn source tree; not part of the installed package."""
