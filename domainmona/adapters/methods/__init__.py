"""Registry of the PEFT methods (the Mona paper's comparison set and the methods put beside Mona since), one file
per method."""

from domainmona.adapters.methods.adapter import Adapter
from domainmona.adapters.methods.adaptformer import AdaptFormer
from domainmona.adapters.methods.base import Method
from domainmona.adapters.methods.bitfit import BitFit
from domainmona.adapters.methods.conv_adapter import ConvAdapter
from domainmona.adapters.methods.convpass import Convpass
from domainmona.adapters.methods.fact_tk import FacTTK
from domainmona.adapters.methods.fact_tt import FacTTT
from domainmona.adapters.methods.fixed import Fixed
from domainmona.adapters.methods.full import Full
from domainmona.adapters.methods.kadaptation import KAdaptation
from domainmona.adapters.methods.krona import KronA
from domainmona.adapters.methods.lora import LoRA
from domainmona.adapters.methods.lorand import LoRand
from domainmona.adapters.methods.mona import Mona
from domainmona.adapters.methods.normtuning import NormTuning
from domainmona.adapters.methods.parallel_adapter import ParallelAdapter
from domainmona.adapters.methods.partial import Partial
from domainmona.adapters.methods.ssf import SSF
from domainmona.adapters.methods.vpt import VPTDeep, VPTShallow
from domainmona.errors import UserError

METHODS: dict[str, Method] = {m.name: m for m in (Full(), Fixed(), BitFit(), NormTuning(), Partial(), Adapter(),
                                                  LoRA(), AdaptFormer(), LoRand(), Mona(), SSF(),
                                                  ParallelAdapter(), FacTTT(), FacTTK(), KronA(), KAdaptation(),
                                                  VPTDeep(), VPTShallow(), Convpass(), ConvAdapter())}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown adapter method '{name}' (choose from: {', '.join(METHODS)})") from None
