"""Video in and out: probing clips, reading frames (ffmpeg processes, frame timing), writing videos and
frames atomically, and the read-ahead/write-behind threads that overlap them with the model."""
