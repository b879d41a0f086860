"""Denoising: A = I."""


def make(image_shape):
    return {}


def forward(x, params):
    return x


def project(x, y, params):
    return y


def display(y, params):
    return y
