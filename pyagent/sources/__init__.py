"""Where Kubernetes objects come from: a manifests directory or the API server."""
