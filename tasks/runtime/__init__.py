"""What running any stage needs: user-facing errors, devices, parallel maps, progress."""
