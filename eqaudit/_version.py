"""The package version, in a leaf module: any module may read it without importing the package's
lazy public exports (which would make an import cycle)."""

__version__ = "0.1.0"
