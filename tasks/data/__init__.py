"""What stages read and write: the data layout, file formats, archives, datasets, the token store."""
