"""What vedit keeps on disk between runs: inverted clips (the inversion cache), checkpoints of stopped runs,
what the two share (their folder, temporary files, listing), and the checksums that keep a damaged file from
being used."""
