"""Slides: opening whole-slide images, µm/px, tiling coordinates and the tile reader."""
