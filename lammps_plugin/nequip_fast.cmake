# pair_style nequip compiled into LAMMPS itself. `nequip-fast lammps-plugin --patch-lammps DIR`
# copies this file, nequip_lammps_api.cmake and the pair style sources into a LAMMPS source tree and
# includes this file at the end of its cmake/CMakeLists.txt. Configure LAMMPS with
#   -DCMAKE_PREFIX_PATH=$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')
#   -DNEQUIP_FAST_OPS_LIBRARY=$(python -c 'from nequip_fast.ops import native; print(native.load())')
# LAMMPS's cmake/Modules/FindMKL.cmake shadows torch's and would leave MKL_INCLUDE_DIR-NOTFOUND in
# torch's interface; the torch libraries carry their MKL, so an empty caffe2::mkl target is enough
if(NOT TARGET caffe2::mkl)
  add_library(caffe2::mkl INTERFACE IMPORTED)
endif()
find_package(Torch REQUIRED)
set(NEQUIP_FAST_OPS_LIBRARY "" CACHE FILEPATH "the nequip_fast fused conv ops library")
include("${CMAKE_CURRENT_LIST_DIR}/nequip_lammps_api.cmake")
target_link_libraries(lammps PRIVATE "${TORCH_LIBRARIES}")
# on model.cpp alone: a new ops library path (another torch, another cache) recompiles one file
set_property(SOURCE "${LAMMPS_SOURCE_DIR}/model.cpp" APPEND PROPERTY
             COMPILE_DEFINITIONS NEQUIP_FAST_OPS_LIBRARY="${NEQUIP_FAST_OPS_LIBRARY}")
nequip_lammps_api(lammps "${LAMMPS_SOURCE_DIR}")
get_target_property(nequip_cxx_standard lammps CXX_STANDARD)
if(nequip_cxx_standard LESS 17)  # libtorch's headers need C++17 (LAMMPS before 2023 asks for C++11)
  set_target_properties(lammps PROPERTIES CXX_STANDARD 17)
endif()
