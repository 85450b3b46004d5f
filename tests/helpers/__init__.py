"""What several test modules share: clips, the command line, files of vedit's formats, the reference method."""
