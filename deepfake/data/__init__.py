"""Images and the sets they come in: loading, layouts, manifests, preprocessing, perturbations, benchmarks, the bias audit."""
