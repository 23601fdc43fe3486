"""Domain-free adapter core: Mona and peer PEFT methods, injection, fusion, adapter checkpoints."""

from domainmona.adapters.checkpoint import load_adapter, save_adapter
from domainmona.adapters.fuse import fuse
from domainmona.adapters.inject import adapted_backbones, apply_freeze, inject
from domainmona.adapters.methods import METHODS
from domainmona.adapters.modules.mona import Mona, Mona3d
from domainmona.adapters.official import load_official_mona
from domainmona.adapters.pretrained import load_pretrained
from domainmona.adapters.report import TrainableReport, trainable_report
from domainmona.adapters.weights import LoadReport

__all__ = ["METHODS", "LoadReport", "Mona", "Mona3d", "TrainableReport", "adapted_backbones", "apply_freeze", "fuse",
           "inject", "load_adapter", "load_official_mona", "load_pretrained", "save_adapter", "trainable_report"]
