"""domainmona: Mona adapters for remote-sensing and medical-imaging vision backbones."""

__version__ = "0.1.0"
