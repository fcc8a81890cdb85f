"""From an image to a mask: intensity normalisation and resampling, the sliding-window predictor,
and the metrics that judge its masks."""
