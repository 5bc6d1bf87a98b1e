"""A drawing kit that knows no experiment: image grids, heatmaps, PNG writing, Markdown table cells."""
