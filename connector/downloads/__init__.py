"""Downloads: stable buyer links, storage backends, watermarks."""
