"""The Palimpsest operator: runs RewriteJob resources as Kubernetes Indexed Jobs.

Kept apart from `palimpsest` (the data library) so that the operator image carries Kopf and the
Kubernetes client but never vLLM or pylint; `palimpsest` never imports this package.
"""
