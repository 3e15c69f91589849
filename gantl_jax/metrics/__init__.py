"""Image-set metrics that need no pretrained network, so they run offline (demo, tests).

`swd`: the sliced Wasserstein distance of Progressive GAN over Laplacian-pyramid patches.
"""
