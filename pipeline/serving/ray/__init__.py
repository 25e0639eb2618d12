"""Ray Serve: the application (one deployment per archive), its local or remote cluster's lifecycle, the KubeRay manifest."""
