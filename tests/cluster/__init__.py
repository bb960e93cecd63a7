"""The test cluster: a Kubernetes control plane built from source, a test kubelet, S3."""
