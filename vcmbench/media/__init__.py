"""The bottom layer: pixels, clips, YUV, hashes, devices and cache paths.

Modules here import only the standard library, NumPy, PIL, OpenCV and :mod:`vcmbench.errors`
(torch only inside functions), so every other part of vcmbench may import them.
"""
