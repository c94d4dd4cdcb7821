# nequip_lammps_api(<target> <LAMMPS src or include dir>): the compile definitions that
# lammps_compat.h needs, read from the LAMMPS headers the target compiles against.
function(nequip_lammps_api target lammps_dir)
  file(STRINGS "${lammps_dir}/neighbor.h" add_request REGEX "add_request")
  if(NOT add_request)
    target_compile_definitions(${target} PRIVATE NEQUIP_LAMMPS_OLD_NEIGHBOR_API)
  endif()
  file(STRINGS "${lammps_dir}/utils.h" join_words REGEX "join_words")
  if(NOT join_words)
    target_compile_definitions(${target} PRIVATE NEQUIP_LAMMPS_NO_JOIN_WORDS)
  endif()
endfunction()
