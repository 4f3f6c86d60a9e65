"""Slides: reading (openslide / tiffslide), the synthetic generator, tissue masks, patch grids, annotations."""
