"""PyInstaller hook for mlx (none ships with PyInstaller or its contrib hooks).

``libmlx`` (a shared library in mlx/lib, from the mlx-cpu wheel on Linux and mlx-metal on a Mac) is loaded by the
``mlx.core`` extension. On a Mac, MLX looks for its Metal kernels, ``mlx.metallib``, in the folder of the libmlx it
loaded (the directory of the image ``dladdr`` reports), so the two must land in the same folder of the bundle:
both keep their mlx/lib place here. PyInstaller also links libmlx into the top folder (extensions find it there
through their rewritten run path), so the spec puts a link to the metallib beside that too and then checks the
result (buildinfo.layout_problems), failing the build if MLX could not find its kernels. The C++ headers and CMake
files in mlx/include and mlx/share are for building extensions: left out.
"""

from PyInstaller.utils.hooks import collect_data_files, collect_dynamic_libs

binaries = collect_dynamic_libs("mlx")
datas = collect_data_files("mlx", includes=["lib/*.metallib"])
# The mlx.core extension imports these from C, where PyInstaller cannot see them.
hiddenimports = ["mlx._reprlib_fix", "mlx.__array_api_info", "mlx.nn", "mlx.optimizers", "mlx.utils"]
