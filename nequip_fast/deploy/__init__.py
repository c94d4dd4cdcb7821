"""Deployment: a trained model -> one compiled, self-describing file for C++ (LAMMPS) and Python."""
from .deployed import DeployedPotential
from .package import DeployError, deploy, read_metadata

__all__ = ["DeployError", "DeployedPotential", "deploy", "read_metadata"]
